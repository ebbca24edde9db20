"""The command line (``clientlb``) and the demo: apart from the library core."""
