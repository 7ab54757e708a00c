"""The Colab notebook is valid, and its code runs against the package's current API."""

import ast
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "nuwa_xl_demo.ipynb")


def test_notebook_cells_parse_and_name_real_api():
    nb = json.load(open(NOTEBOOK))
    assert nb["nbformat"] == 4
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for src in code:
        ast.parse(src)
    # Every `from nuwa_jax... import name` in the notebook exists.
    for src in code:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith(("nuwa_jax", "configs")):
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    for path in ("configs/storyboards/demo.txt", "requirements.txt"):
        assert os.path.exists(os.path.join(REPO, path))
