"""Own data: ranking a lab's scans (query, the API) and the MONAI Label app."""
