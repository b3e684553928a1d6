"""mminterest: a feature-store-centric platform for multimodal user-interest CTR models."""
