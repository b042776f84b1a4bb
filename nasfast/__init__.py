"""nasfast: fast neural architecture search of compact segmentation decoders."""
