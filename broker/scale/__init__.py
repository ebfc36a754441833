"""Scale-out mode: what a site needs on an external, possibly clustered broker (docs/scale-out.md)."""
