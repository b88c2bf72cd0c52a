"""The lab's EWS endpoint: ConvertId, GetFolder, FindFolder, FindItem, GetItem, DeleteItem, MoveItem, Subscribe,
GetEvents, GetStreamingEvents and Unsubscribe, answered as Exchange 2013-2019 answer them.

Microsoft's EWS reference pages and their examples are the specification (tests/data/ews/examples holds the
ones the tests replay); every reply validates against the schema Exchange serves, except where Exchange itself
departs from it (a streamed notification is ``m:Notification``, as Exchange writes it and the EWS Managed API
reads it; the schema says ``t:``). The server reports Exchange 2019 (15.2.1544.4, ``V2017_07_11``). Where
Exchange versions differ, the lab follows 2013-2019, and where those differ, 2016/2019:

- properties of other item types asked of a message (calendar:, meeting:, ...) are left out; Exchange 2007
  answered ErrorInvalidPropertyRequest (and some 2010 servers did for calendar:End);
- GetItem/FindItem AllProperties and Default are the 2013+ first-class and default sets (Microsoft's "Email
  properties and elements" and "Property sets and response shapes" pages);
- ids are GUID-based EwsIds (2010 and later); 2007's EwsLegacyId is a ConvertId format, in and out;
- streamed notifications are framed as 2013-2019 frame them: ``<Envelope xmlns=...>`` with ``soap11:`` Header
  and Body, no XML declarations, no per-event watermarks;
- SoftDelete (and MoveToDeletedItems of an item already in Deleted Items) moves the item to Recoverable
  Items\\Deletions, out of the client's folders (2010 and later); HardDelete removes it, as with single item
  recovery off (the default; with it on, 2010+ keep hard-deleted items in Recoverable Items\\Purges);
- DateTimeReceived is whole seconds unless ``t:DateTimePrecision`` asks for milliseconds (2010 SP2 and later),
  and the store keeps milliseconds, so a returned stamp finds its message again in IsEqualTo;
- the mailbox has the folders of a new 2016/2019 mailbox (``probe.lab.folder_tree``).
"""

from __future__ import annotations

from probe.lab.ews.server import EwsServer, add_response_observer, remove_response_observer

__all__ = ["EwsServer", "add_response_observer", "remove_response_observer"]
