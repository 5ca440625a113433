"""caseformat: the store's key layout and every document on it, typed, bounded and (the centre's) signed.

The one place that knows what a case looks like on the store (`layout`), how each document is written and read
back (`documents`: typed, versioned dataclasses), how untrusted bytes become those types (`bounded`), and how the
centre's word is signed and verified (`signing`). Writers and readers in transfer/, inference/, viewer/ and the
station all go through it, so a writer and its readers cannot drift apart, and no reader trusts a store document
before it is parsed.
"""

from caseformat.errors import CaseFormatError, DocumentError, InvalidIdError, SignatureError
from caseformat.layout import SlideRef

__all__ = ["CaseFormatError", "DocumentError", "InvalidIdError", "SignatureError", "SlideRef"]
