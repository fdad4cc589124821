require ["fileinto", "imap4flags"];
if address :localpart :is "from" ["bbb", "billing", "news"] { fileinto "Work"; }
if address :localpart :matches "to" "*-request" { addflag "$list"; }
