require ["body", "imap4flags"];
if body :raw :contains "<b>" { addflag "html"; }
if body :raw :matches "*quick brown*" { addflag "fox"; }
