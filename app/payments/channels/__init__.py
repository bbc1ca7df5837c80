"""Payment channels behind one interface; each exchanges small dataclasses with the payments service."""
