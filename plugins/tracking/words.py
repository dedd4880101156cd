"""What the tracking page says, in English and Hindi. A customer's choice
(``?lang=``), else the browser's ``Accept-Language``, else the order's
language picks one."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

LANGUAGES = ("en", "hi")

#: The status in words a customer understands, by event type.
STATUS: dict[str, dict[str, str]] = {
    "en": {"OFD": "Out for delivery", "DEL": "Delivered", "FAIL": "We missed you", "RET": "Being returned",
           "RESCHEDULE_REQUESTED": "You asked for a new date", "INSTRUCTIONS_ADDED": "You added instructions",
           "RATED": "You rated the delivery", "": "Order received"},
    "hi": {"OFD": "डिलीवरी के लिए निकला", "DEL": "डिलीवर हो गया", "FAIL": "डिलीवरी नहीं हो सकी",
           "RET": "वापस भेजा जा रहा है", "RESCHEDULE_REQUESTED": "आपने नई तारीख चुनी",
           "INSTRUCTIONS_ADDED": "आपने निर्देश जोड़े", "RATED": "आपने रेटिंग दी", "": "ऑर्डर दर्ज हो गया"},
}

#: Failure codes in plain words; other codes show the OMS's reason.
FAILURES: dict[str, dict[str, str]] = {
    "en": {"CUSTOMER_UNAVAILABLE": "You were not available when the rider came",
           "ADDRESS_NOT_FOUND": "The rider could not find your address",
           "CUSTOMER_REFUSED": "The delivery was refused",
           "CASH_NOT_READY": "Cash for the delivery was not ready",
           "PREMISES_CLOSED": "The premises were closed"},
    "hi": {"CUSTOMER_UNAVAILABLE": "राइडर के आने पर आप उपलब्ध नहीं थे",
           "ADDRESS_NOT_FOUND": "राइडर आपका पता नहीं ढूंढ सका",
           "CUSTOMER_REFUSED": "डिलीवरी लेने से मना किया गया",
           "CASH_NOT_READY": "डिलीवरी के लिए नकद तैयार नहीं था",
           "PREMISES_CLOSED": "परिसर बंद था"},
}

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "order": "Order", "timeline": "Updates", "rider": "Your rider", "call": "Call the rider",
        "otp_ready": "Keep your OTP ready: share it only with the rider, at your door.",
        "show_otp": "Show my OTP", "your_otp": "Your OTP", "deliver_to": "Delivering to",
        "reason": "What happened", "reschedule": "Pick a new delivery date", "send_date": "Reschedule",
        "instructions": "Delivery instructions", "instructions_hint": "Landmark, gate, who can receive it...",
        "send_instructions": "Send instructions", "delivered_at": "Delivered", "received_by": "Received by",
        "rate": "How was your delivery?", "comment": "Anything to tell us? (optional)", "send_rating": "Send rating",
        "thanks_rating": "Thank you for your rating", "return_reason": "Reason", "return_to": "Returning to",
        "return_id": "Return", "return_since": "started",
        "requested": "Requested delivery on", "support": "Need help?", "no_updates": "No updates yet.",
        "live_off": "Reload the page to see new updates.", "stars": "stars",
        "done_reschedule": "Thank you: we asked for delivery on the date you picked.",
        "done_instructions": "Thank you: the rider will see your instructions.",
        "done_rating": "Thank you for your rating.",
        "bad_date": "Pick one of the offered dates.", "bad_rating": "Pick a rating from 1 to 5 stars.",
        "bad_instructions": "Write your instructions (up to 500 characters).",
        "bad_comment": "Keep your comment to 1,000 characters or fewer.",
        "bad_characters": "Your text has characters we cannot send: please type it again.",
        "refused": "We could not accept this: please check what you wrote and try again.",
        "too_many": "Too many requests from this page: please try again in a few minutes.",
        "expired_form": "This form has expired: reload the page and try again.",
        "not_now": "This can no longer be changed for this order.",
    },
    "hi": {
        "order": "ऑर्डर", "timeline": "अपडेट", "rider": "आपका राइडर", "call": "राइडर को कॉल करें",
        "otp_ready": "अपना OTP तैयार रखें: इसे केवल अपने दरवाजे पर राइडर को बताएं।",
        "show_otp": "मेरा OTP दिखाएं", "your_otp": "आपका OTP", "deliver_to": "डिलीवरी का पता",
        "reason": "क्या हुआ", "reschedule": "डिलीवरी की नई तारीख चुनें", "send_date": "तारीख बदलें",
        "instructions": "डिलीवरी निर्देश", "instructions_hint": "लैंडमार्क, गेट, कौन ले सकता है...",
        "send_instructions": "निर्देश भेजें", "delivered_at": "डिलीवर हुआ", "received_by": "किसने लिया",
        "rate": "आपकी डिलीवरी कैसी रही?", "comment": "कुछ कहना चाहेंगे? (वैकल्पिक)", "send_rating": "रेटिंग भेजें",
        "thanks_rating": "रेटिंग के लिए धन्यवाद", "return_reason": "कारण", "return_to": "कहां लौट रहा है",
        "return_id": "वापसी", "return_since": "शुरू हुई",
        "requested": "चुनी गई डिलीवरी तारीख", "support": "मदद चाहिए?", "no_updates": "अभी कोई अपडेट नहीं।",
        "live_off": "नए अपडेट देखने के लिए पेज रीलोड करें।", "stars": "स्टार",
        "done_reschedule": "धन्यवाद: आपकी चुनी तारीख पर डिलीवरी का अनुरोध भेज दिया गया है।",
        "done_instructions": "धन्यवाद: राइडर आपके निर्देश देखेगा।",
        "done_rating": "रेटिंग के लिए धन्यवाद।",
        "bad_date": "दी गई तारीखों में से एक चुनें।", "bad_rating": "1 से 5 स्टार में से रेटिंग चुनें।",
        "bad_instructions": "अपने निर्देश लिखें (500 अक्षरों तक)।",
        "bad_comment": "टिप्पणी 1,000 अक्षरों तक रखें।",
        "bad_characters": "आपके टेक्स्ट में ऐसे अक्षर हैं जिन्हें भेजा नहीं जा सकता: कृपया इसे फिर से लिखें।",
        "refused": "हम इसे स्वीकार नहीं कर सके: आपने जो लिखा है उसे जांचकर फिर कोशिश करें।",
        "too_many": "इस पेज से बहुत सारे अनुरोध: कुछ मिनट बाद फिर कोशिश करें।",
        "expired_form": "यह फॉर्म पुराना हो गया है: पेज रीलोड करके फिर कोशिश करें।",
        "not_now": "इस ऑर्डर के लिए अब यह बदला नहीं जा सकता।",
    },
}


MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "hi": ("जन॰", "फ़र॰", "मार्च", "अप्रैल", "मई", "जून", "जुल॰", "अग॰", "सित॰", "अक्तू॰", "नव॰", "दिस॰"),
}
WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "hi": ("सोम", "मंगल", "बुध", "गुरु", "शुक्र", "शनि", "रवि"),
}


def day_words(day: date, language: str) -> str:
    """``Tue 01 Dec`` / ``मंगल 01 दिस॰``, whatever the server's locale."""
    return f"{WEEKDAYS[language][day.weekday()]} {day.day:02d} {MONTHS[language][day.month - 1]}"


def moment_words(moment: datetime, language: str) -> str:
    """``29 Nov 2026, 14:05`` in the language's month names."""
    return f"{moment.day:02d} {MONTHS[language][moment.month - 1]} {moment.year}, {moment:%H:%M}"


def words(language: str) -> dict[str, Any]:
    return {"labels": LABELS[language], "status": STATUS[language], "failures": FAILURES[language]}


def pick_language(choice: str | None, accept: str | None, order_language: str | None) -> str:
    """The customer's choice, else the browser's first language we speak
    (by ``q``), else the order's, else English."""
    if choice in LANGUAGES:
        return str(choice)
    ranked: list[tuple[float, str]] = []
    for part in (accept or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((q, tag.strip().split("-")[0].lower()))
    for q, tag in sorted(ranked, key=lambda pair: -pair[0]):
        if q > 0 and tag in LANGUAGES:
            return tag
    order = (order_language or "en").split("-")[0]
    return order if order in LANGUAGES else "en"
