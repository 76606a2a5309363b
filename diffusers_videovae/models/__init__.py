"""One file per model. Import the classes from `diffusers_videovae` directly."""
