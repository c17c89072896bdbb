"""The reviewer's card: one view model of an approval request, rendered safely for every channel.

:mod:`.card` builds the card from a request as the approvals service returns it; :mod:`.markdown`
renders a request's Markdown body to sanitised HTML; :mod:`.links` is the one rule for links. The
dashboard lays the card out as HTML; e-mail and Slack messages lay out the same card.
"""
