"""DsCo dataset concentration: the library (no Ray here; everything runs in-process)."""
