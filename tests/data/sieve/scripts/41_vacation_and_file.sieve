require ["vacation", "fileinto", "imap4flags"];
if exists "list-id" { fileinto "Lists"; stop; }
addflag "\\Seen";
vacation :days 3 "Thanks, I will answer later.";
