"""Raw clinical scans in: co-registration, brain extraction and bias-field correction before any model."""
