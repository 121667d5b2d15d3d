"""Remote series and searches: opening an archive's series at once, pulling frames in the
order the analyst needs them."""
