"""What a generation is conditioned on: characters, routing masks and layouts, prompts with [Name] tags, and the per-character attention conditions built from them."""
