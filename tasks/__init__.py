"""Task definitions shipped with lnzoo, as TOML data (installed as the package ``lnzoo_tasks``)."""
