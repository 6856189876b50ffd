"""The vSphere adapter: the only code that imports pyVmomi or speaks vCenter's REST API."""
