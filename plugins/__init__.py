"""The built-in skip variants, one module per skip family, each loaded as a skipbench plugin.

Installed as the package ``skipbench_plugins``; every module here is registered by the plugin
manager, and every ``*.toml`` file here holds packaged default variants.
"""
