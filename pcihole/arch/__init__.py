"""Architecture-specific set-up."""
