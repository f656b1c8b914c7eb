"""The shop: an example domain for soloist (pure rules, read models, and one wiring module)."""
