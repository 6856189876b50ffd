"""The Kubernetes layer: the only code that imports kopf or the kubernetes client."""
