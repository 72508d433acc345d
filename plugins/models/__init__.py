"""The built-in models: ``tiny-zh``, the small Chinese model the default shootout runs on."""
