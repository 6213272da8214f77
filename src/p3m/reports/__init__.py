"""HTML reports: self-contained pages (thumbnails embedded, no script, nothing fetched) for
``p3m evaluate --report FILE.html`` and ``p3m anonymize --report FILE.html``."""
