"""The launcher's bootstrap: `azml-v1-bridge run` puts this folder first on PYTHONPATH,
so every Python process the command starts imports `sitecustomize.py` from here."""
