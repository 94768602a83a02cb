"""The frame path: capture a frame, prepare it, run the interpreter, decide what to publish."""
