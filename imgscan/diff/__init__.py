"""`imgscan diff`: two images or SBOMs reduced to one summary each, then compared by one function."""
