"""Model parts: the character encoders, the projector, the character attention, the text adapter and the FLUX pipeline that joins them."""
