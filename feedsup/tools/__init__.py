"""Tooling around the product: the demo and the chaos run. The product never imports it."""
