"""Reading untrusted images and writing outputs safely: the one reader (:mod:`p3m.io.read`)
and the one writer (:mod:`p3m.io.write`) every command and the Python API go through."""
from p3m.io.read import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    ImageInput,
    ImageReadError,
    is_image_file,
    open_image,
    read_image,
    read_mask,
    to_rgb8,
)
from p3m.io.write import (
    TEMP_PATTERN,
    OutputFolder,
    RunInputs,
    UnsafeOutputError,
    append_text,
    atomic_write,
    check_destination,
    output_complete,
    remove_output,
    remove_stale_temporaries,
    save_image,
    write_text,
)

__all__ = [
    "ALLOWED_FORMATS", "IMAGE_EXTENSIONS", "TEMP_PATTERN", "ImageInput", "ImageReadError", "OutputFolder", "RunInputs",
    "UnsafeOutputError", "append_text", "atomic_write", "check_destination", "is_image_file", "open_image",
    "output_complete", "read_image", "read_mask", "remove_output", "remove_stale_temporaries", "save_image", "to_rgb8",
    "write_text",
]
