"""Files in, arrays out, and back: image reading/writing and the protected file's metadata record.

This package is the only place where files meet pixels (``io.image``) and where the PNG's
``faceveil`` text chunk is read and written (``io.container``; specification in ``docs/FORMAT.md``).
It imports neither torch nor the rest of faceveil.
"""

from .container import (
    FORMAT_VERSION,
    MAX_FACES,
    MAX_RECORD_BYTES,
    TEXT_KEY,
    FaceEntry,
    ImageSize,
    KdfParams,
    ModelRef,
    Record,
    VeilRef,
    canonical_bytes,
    compute_mac,
    embed,
    extract,
    verify_mac,
)
from .image import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    encode_image,
    exif_for_output,
    is_lossless,
    output_format_for,
    read_image,
    read_image_bytes,
    same_file,
    set_pillow_pixel_limit,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "LoadedImage", "encode_image", "exif_for_output", "is_lossless",
    "output_format_for", "read_image", "read_image_bytes", "same_file", "set_pillow_pixel_limit",
    "write_image",
    "FORMAT_VERSION", "MAX_FACES", "MAX_RECORD_BYTES", "TEXT_KEY", "FaceEntry", "ImageSize",
    "KdfParams", "ModelRef", "Record", "VeilRef", "canonical_bytes", "compute_mac", "embed",
    "extract", "verify_mac",
]
