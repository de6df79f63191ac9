"""Readers and writers: PNG slices and montages (NIfTI and DICOM come with the clinical I/O)."""
