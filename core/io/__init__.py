"""Files: reading user images safely, PNG metadata, user folders and atomic writes, the path policy, caches."""
