"""Images as geometry: volumes that grow while a scan arrives, reslicing (MPR), materials."""
