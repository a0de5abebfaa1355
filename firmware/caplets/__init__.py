"""CAPLets capability tokens (chained HMAC-SHA256)."""
