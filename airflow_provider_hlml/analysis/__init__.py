"""Static checks shown to reviewers: code security analysis and content compliance checks."""
