"""The self-contained node probe and the parsers for what it sends back."""
