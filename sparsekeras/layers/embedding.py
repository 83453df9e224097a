"""placeholder: filled by its family owner."""
__all__ = []
