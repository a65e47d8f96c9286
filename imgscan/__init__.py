"""imgscan: container-image analyzer that follows shared-object linkage inside the image, as ld.so would."""

__version__ = "0.1.0"
