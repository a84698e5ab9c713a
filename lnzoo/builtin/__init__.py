"""lnzoo's default plugins: registered through the ``lnzoo`` entry points like any third party."""
