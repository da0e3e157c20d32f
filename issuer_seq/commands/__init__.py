"""Entry points of the `issuer-seq` commands: the only code that sees a DictConfig."""
