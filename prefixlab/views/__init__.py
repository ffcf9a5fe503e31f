"""Views: tables (tables.py) and matplotlib figures (figures.py) read from a run folder.

Pure: no Gradio, no training. May import the engine and the core.
"""
