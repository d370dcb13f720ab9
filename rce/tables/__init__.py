"""TensorFlow-free tables: data sets, attacks, model names, image range and eps sweep, errors."""
