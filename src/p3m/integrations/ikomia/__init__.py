"""p3m as an Ikomia task: ``infer_p3m_portrait_matting``, a thin adapter over :class:`p3m.Matter`.

``installer`` writes and removes the plugin (no ``ikomia`` import needed);
``adapter`` holds the task's parameters and outputs; ``task`` holds Ikomia's
classes and is imported by the installed plugin.
"""
from p3m.integrations.ikomia.installer import (PLUGIN_NAME, InstallReport, PluginConflictError, UninstallReport,
                                                ikomia_plugins_dir, install, plugin_folder, uninstall)

__all__ = ["PLUGIN_NAME", "InstallReport", "PluginConflictError", "UninstallReport", "ikomia_plugins_dir",
           "install", "plugin_folder", "uninstall"]
