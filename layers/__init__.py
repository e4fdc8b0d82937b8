"""Custom Keras layers. Each public class lives in its own module; this package imports nothing of the project."""
