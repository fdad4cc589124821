require ["fileinto", "imap4flags"];
if exists "subject" { fileinto :flags ["\\Seen", "filed"] "Archive"; }
