"""The hospital's station: registers specimens (identity kept here), sends each slide as it is scanned
(`station.pipeline`), triages it first (`station.edge`), watches the scanner's hot folder (`station.hotfolder`) and
receives the centre's signed reports (`station.station`)."""
