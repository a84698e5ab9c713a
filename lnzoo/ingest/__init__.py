"""DICOM ultrasound from the clinic into a dataset lnzoo reads: decoding, the ultrasound region, cine frames,
burned-in marks and de-identification (``lnzoo ingest``)."""
