"""The web editor (``vincie-app``): a model and one user's session (session.py), the Gradio page (ui.py)."""
