"""ml-collections configs. Each preset file defines `get_config(arg)`."""
