"""SBOMs of an image: the facts collected once (model, build), written as CycloneDX or SPDX, read back."""
