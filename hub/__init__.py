"""The pathology centre's hub: scores every arriving slide at full magnification while it arrives, the most urgent
case first, and builds the pyramid levels a send leaves out (`hub.hub.Hub`, `hub.pyramid`)."""
