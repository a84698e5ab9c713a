"""The model zoo's index shipped with lnzoo: one ``NAME.toml`` metafile per published model, and the demo's
archive under ``bundles/`` (installed as the package ``lnzoo_zoo``; see :mod:`lnzoo.zoo`)."""
